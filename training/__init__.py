"""Training the models fanout ships: the corpus, the training loop, the evaluation."""
