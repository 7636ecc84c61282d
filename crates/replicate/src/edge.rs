//! Real implementations of the traits (to come).
