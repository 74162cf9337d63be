"""The ``sovereign`` commands' arguments, one module per command (registered in name order).

These modules import only argparse helpers and light constants; each runner is a dotted path into the
command's implementation module, imported when the command runs (see ``sovereign.cli._lazy``).
"""
