//! The pool-core connection pool on async-std (the adapter arrives with the async driver).
