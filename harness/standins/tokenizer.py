"""A small byte-level BPE tokenizer with a chat template, built locally.

Nothing comes from a hub: the merges are learned from a fixed in-repo text, so the
tokenizer is the same on every machine. Byte-level means any text (code, maths,
unicode) encodes and round-trips.
"""

from __future__ import annotations

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|bos|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 1024

# ChatML, as Qwen uses it. `enable_thinking` is accepted (and ignored) so the same
# chat-template kwargs work for the zoo and for thinking-capable seed models.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_TRAINING_TEXT = """
The quick brown fox jumps over the lazy dog. A mixture of experts routes every token
to a few experts chosen by a router; the rest of the experts stay idle for that token.
Once upon a time, in a small village by the sea, there lived a girl named Mira who
wrote stories about dragons, rivers, kings and clocks. She asked: what is the answer?
Question: Natalia sold clips to 48 of her friends in April, and then she sold half as
many clips in May. How many clips did Natalia sell altogether in April and May?
Answer: 48 / 2 = 24 clips in May. 48 + 24 = 72 clips. The answer is 72.
Solve for x: 3x + 5 = 20, so x = 5. Compute 12 * 7 = 84 and 100 - 37 = 63.
def add(a, b):
    \"\"\"Return the sum of a and b.\"\"\"
    return a + b

def is_prime(n: int) -> bool:
    if n < 2:
        return False
    for i in range(2, int(n ** 0.5) + 1):
        if n % i == 0:
            return False
    return True

for item in items:
    print(item, len(item))
Which of the following is a mammal? A. shark B. whale C. trout D. salmon. Answer: B
The capital of France is Paris. Water boils at 100 degrees Celsius at sea level.
User: Write a haiku about autumn leaves. Assistant: Red leaves drift and fall.
"""


def build_tokenizer():
    """Return a `PreTrainedTokenizerFast` trained deterministically on `_TRAINING_TEXT`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeat the text so that merges beyond single occurrences are learned too.
    core.train_from_iterator([_TRAINING_TEXT] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|bos|>",
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
