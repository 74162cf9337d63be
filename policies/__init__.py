"""Policy model, appraisal and release decisions (claims -> verdict with coded reasons)."""
