"""Stand-ins for what this machine lacks: the zoo of tiny models, the toy model, the offline tokenizer."""
