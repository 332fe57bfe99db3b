"""Foundation every layer stands on: settings, errors, cancellation, model resolution, hardware probes, the loading chain, diagnostics."""
