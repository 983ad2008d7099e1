"""What a person sees: live progress, the log file, the summary, the text and HTML reports."""
