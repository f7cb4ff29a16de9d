"""The actors of the tree: feed, buffer and health actors, each with the messages it receives."""
