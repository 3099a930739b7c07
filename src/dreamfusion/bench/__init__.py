"""Running benchmarks: prompt sets trained run by run, scored with `dreamfusion.eval`, reported."""
