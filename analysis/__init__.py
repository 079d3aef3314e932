"""Analysis: reads run folders only, draws plots, writes reports. Never trains."""
