"""sockwork's pytest plugin is opt-in: this line loads the conformance kit's fixtures."""

pytest_plugins = ["sockwork.pytest_plugin"]
