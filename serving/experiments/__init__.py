"""Campaign experiments: champion/challenger and bandit traffic on the serving path, and the statistics a
reviewer reads them with (`stats`)."""
