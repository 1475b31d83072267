"""How far to trust a workspace: verdicts against expert labels, and the metrics of agreement."""
