"""The synthetic model zoo: real architectures, random weights, real key names, known ground truth."""
