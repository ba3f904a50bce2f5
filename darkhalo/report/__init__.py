"""What a reviewer reads: the remediation report (template, figures) and the pull-request review."""
