"""The run folder on disk: the journal, resume, the output's assembly, the response cache."""
