"""One module per command. Each defines its command function and EXAMPLES; `dmin_cli.app` registers them."""
