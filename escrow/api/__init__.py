"""The HTTP surface (DESIGN §5): app factory, problems, dependencies, routers."""
