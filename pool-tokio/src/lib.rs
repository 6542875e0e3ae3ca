//! The pool-core connection pool on tokio (the adapter arrives with the async driver).
