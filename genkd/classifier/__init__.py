"""Classifier distillation track: the CIFAR model zoo, the distillation losses, `genkd.train_classifier`."""
