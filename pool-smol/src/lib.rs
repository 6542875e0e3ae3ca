//! The pool-core connection pool on smol (the adapter arrives with the async driver).
