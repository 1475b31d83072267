"""Synthetic anomalies drawn into good images (`kb synth-anomalies`): DRAEM-style defects for
workspaces that have good references but no defective examples."""
