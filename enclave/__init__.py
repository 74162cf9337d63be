"""The node agent: evidence providers, node identity keys, RPC client, unsealing, sealed streams."""
