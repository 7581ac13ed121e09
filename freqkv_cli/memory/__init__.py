"""A read document kept as a file: the memory file format (``file_format``), the question-time
passage ranking (``passages``) and recall (``recall``). Import from those modules: this package
imports nothing, so a CLI's help that names the recall methods does not wait for torch."""
