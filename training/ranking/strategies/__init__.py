"""How a ranking job trains: in this process (`local`), through Ray Train (`ray_train`) or with TorchRec-sharded
embedding tables (`sharded`). Each returns a `Fitted` model that `training.ranking.run` finishes the same way."""
