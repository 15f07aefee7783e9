"""Reports: figures and tables drawn from computed results and stores; they compute nothing."""
