//! Tests of the inflight records.
