"""The sampler: logits processors and the KV-cached decode loop. Imports torch."""
