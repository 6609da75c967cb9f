"""How the retrieval stage trains: in this process (`local`) or through Ray Train (`ray_train`). Each returns a
`Fitted` task (final weights loaded) that `training.retrieval.run` finishes the same way."""
