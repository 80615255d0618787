"""A noise-aware classifier p(y | x_t, t) for classifier guidance (Dhariwal & Nichol, 2021):
its network and file format (:mod:`.net`), training on noised images (:mod:`.train`) and the
``classifier`` / ``cfg+classifier`` guidance built on it (:mod:`.guide`)."""

from .net import NoisyClassifier, NoisyClassifierOptions, load_noisy_classifier, save_noisy_classifier

__all__ = ["NoisyClassifier", "NoisyClassifierOptions", "load_noisy_classifier", "save_noisy_classifier"]
