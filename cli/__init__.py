"""The ``parakeet-coreml`` command line: the application on top of exporters, validation and reports."""
