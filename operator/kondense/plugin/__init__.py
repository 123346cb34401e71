"""kubectl-kondense: the kubectl plugin."""
