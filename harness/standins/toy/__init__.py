"""The trained toy MoE: its synthetic corpus (corpus), training (train), in-process scoring
(evaluate) and per-domain routing (routing). The checkpoint lives in models/toy-moe."""
