"""The mailman daemon: configuration, embedded defaults, the tree, the RPC handlers, signals."""
