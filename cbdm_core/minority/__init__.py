"""The minority-generation line (Um et al.): the minority score of an image (:mod:`.score`),
the distances it is measured with (:mod:`.distance`), minority guidance with a noise-aware
minority classifier (:mod:`.guide`) and self-guided minority generation (:mod:`.self_guide`)."""
