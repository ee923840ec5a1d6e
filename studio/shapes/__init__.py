"""The shapes world: the procedurally drawn data the embedded model is trained on, its
vocabulary and tokenizer, its training, its noisy-latent classifier and its evaluation."""
