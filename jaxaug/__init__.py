"""jaxaug: learn data augmentation jointly with the classifier it regularises."""

__version__ = "0.1.0"
