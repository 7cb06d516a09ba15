"""What the model's outputs mean: sample trees, compression in bits, recitation, benchmarks."""
