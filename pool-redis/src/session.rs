//! What a connection's session may have been left in, from the commands sent on it: a pure
//! model (no IO), fed by [`RedisConnection`](crate::RedisConnection) before each command is
//! sent and after its reply, and read at checkin.
//!
//! The rule is pessimistic: a command that may change the session marks the change before
//! it is sent, and only a reply clears the mark. So a command whose future was dropped
//! counts as having run (it may have), and a reset undoes what may be; undoing what is not
//! there is harmless (`DISCARD` outside `MULTI` is an error the reset accepts; `UNWATCH`
//! and `SELECT` are idempotent).

/// What one command may do to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing the next borrower could see.
    None,
    /// `MULTI`: opens a transaction.
    Multi,
    /// `EXEC` or `DISCARD`: ends the transaction and forgets every `WATCH`.
    EndMulti,
    /// `WATCH`: watches keys until `EXEC`, `DISCARD` or `UNWATCH`.
    Watch,
    /// `UNWATCH`.
    Unwatch,
    /// `SELECT n` (`None`: an index that does not parse; the server refuses it, but the
    /// model does not need to know).
    Select(Option<i64>),
    /// A command after which the connection cannot be reset with certainty, so it is closed
    /// at checkin: subscribe mode (`SUBSCRIBE`, `PSUBSCRIBE`, `SSUBSCRIBE`), `MONITOR`,
    /// another user or protocol (`AUTH`, `HELLO`), `RESET` (it also logs the client out),
    /// `QUIT`, and `CLIENT REPLY` or `CLIENT TRACKING` (replies that do not come, or
    /// invalidation pushes).
    Poison(&'static str),
}

impl Effect {
    /// The effect of the command whose arguments (name first) are `args`.
    pub(crate) fn of<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> Self {
        let Some(name) = args.next() else {
            return Self::None;
        };
        let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        if is("MULTI") {
            Self::Multi
        } else if is("EXEC") || is("DISCARD") {
            Self::EndMulti
        } else if is("WATCH") {
            Self::Watch
        } else if is("UNWATCH") {
            Self::Unwatch
        } else if is("SELECT") {
            let index = args
                .next()
                .and_then(|a| std::str::from_utf8(a).ok())
                .and_then(|s| s.trim().parse().ok());
            Self::Select(index)
        } else if let Some(poison) = [
            "SUBSCRIBE",
            "PSUBSCRIBE",
            "SSUBSCRIBE",
            "MONITOR",
            "AUTH",
            "HELLO",
            "RESET",
            "QUIT",
        ]
        .into_iter()
        .find(|p| is(p))
        {
            Self::Poison(poison)
        } else if is("CLIENT") {
            let sub = args.next().unwrap_or_default();
            if sub.eq_ignore_ascii_case(b"REPLY") {
                Self::Poison("CLIENT REPLY")
            } else if sub.eq_ignore_ascii_case(b"TRACKING") {
                Self::Poison("CLIENT TRACKING")
            } else {
                Self::None
            }
        } else {
            Self::None
        }
    }
}

/// The session state a borrower may leave behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// The database the manager selects at connect, and restores.
    pub(crate) configured_db: i64,
    /// The selected database, `None` when unknown (a `SELECT` without its reply).
    pub(crate) db: Option<i64>,
    /// A transaction may be open.
    pub(crate) multi: bool,
    /// Keys may be watched.
    pub(crate) watching: bool,
    /// A command was sent after which the connection must be closed.
    pub(crate) poisoned: Option<&'static str>,
    /// A command's future was dropped before its reply arrived: a reply may still be due.
    pub(crate) abandoned: bool,
    /// A command failed in a way that leaves the connection unusable (IO, a closed socket).
    pub(crate) broken: bool,
}

impl Session {
    pub(crate) fn new(db: i64) -> Self {
        Self {
            configured_db: db,
            db: Some(db),
            multi: false,
            watching: false,
            poisoned: None,
            abandoned: false,
            broken: false,
        }
    }

    /// Before the command is sent: mark what it may change.
    pub(crate) fn before(&mut self, effect: Effect) {
        match effect {
            Effect::Multi => self.multi = true,
            Effect::Watch => self.watching = true,
            Effect::Select(_) => self.db = None,
            Effect::Poison(name) => self.poisoned = self.poisoned.or(Some(name)),
            Effect::None | Effect::EndMulti | Effect::Unwatch => {}
        }
    }

    /// After a successful reply: what the command certainly did. Inside a transaction
    /// commands are only queued, so `UNWATCH` and `SELECT` change nothing known until
    /// `EXEC` (which ends the watch anyway; the database stays unknown).
    pub(crate) fn after_ok(&mut self, effect: Effect) {
        match effect {
            Effect::Multi => self.multi = true,
            Effect::EndMulti => {
                self.multi = false;
                self.watching = false;
            }
            Effect::Unwatch if !self.multi => self.watching = false,
            Effect::Select(Some(n)) if !self.multi => self.db = Some(n),
            _ => {}
        }
    }

    /// Whether the next borrower could see anything of this lease: then the connection is
    /// reset (or closed) before it is lent again.
    pub(crate) fn dirty(&self) -> bool {
        self.abandoned || self.multi || self.watching || self.db != Some(self.configured_db)
    }

    /// Whether the connection must be closed rather than reset.
    pub(crate) fn unusable(&self) -> bool {
        self.broken || self.poisoned.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::{Effect, Session};

    fn effect(command: &str) -> Effect {
        Effect::of(command.split(' ').map(str::as_bytes))
    }

    #[test]
    fn commands_are_classified_case_insensitively() {
        assert_eq!(effect("multi"), Effect::Multi);
        assert_eq!(effect("EXEC"), Effect::EndMulti);
        assert_eq!(effect("Discard"), Effect::EndMulti);
        assert_eq!(effect("WATCH a b"), Effect::Watch);
        assert_eq!(effect("unwatch"), Effect::Unwatch);
        assert_eq!(effect("SELECT 5"), Effect::Select(Some(5)));
        assert_eq!(effect("SELECT x"), Effect::Select(None));
        assert_eq!(effect("subscribe c"), Effect::Poison("SUBSCRIBE"));
        assert_eq!(effect("PSUBSCRIBE c*"), Effect::Poison("PSUBSCRIBE"));
        assert_eq!(effect("client reply off"), Effect::Poison("CLIENT REPLY"));
        assert_eq!(
            effect("CLIENT TRACKING on"),
            Effect::Poison("CLIENT TRACKING")
        );
        assert_eq!(effect("CLIENT ID"), Effect::None);
        assert_eq!(effect("GET multi"), Effect::None);
        assert_eq!(Effect::of(std::iter::empty()), Effect::None);
    }

    #[test]
    fn a_command_without_its_reply_counts_as_having_run() {
        let mut s = Session::new(0);
        assert!(!s.dirty());
        s.before(Effect::Multi);
        assert!(s.dirty(), "MULTI sent: a transaction may be open");
        s.after_ok(Effect::Multi);
        s.before(Effect::EndMulti);
        assert!(s.multi, "EXEC sent but not answered: still maybe open");
        s.after_ok(Effect::EndMulti);
        assert!(!s.dirty());

        s.before(Effect::Select(Some(5)));
        assert_eq!(s.db, None, "unknown until the reply");
        s.after_ok(Effect::Select(Some(5)));
        assert_eq!(s.db, Some(5));
        assert!(s.dirty());
        s.before(Effect::Select(Some(0)));
        s.after_ok(Effect::Select(Some(0)));
        assert!(!s.dirty(), "back on the configured database");
    }

    #[test]
    fn queued_commands_change_nothing_known_until_exec() {
        let mut s = Session::new(2);
        for e in [Effect::Watch, Effect::Multi] {
            s.before(e);
            s.after_ok(e);
        }
        for e in [Effect::Unwatch, Effect::Select(Some(2))] {
            s.before(e);
            s.after_ok(e);
        }
        assert!(s.watching, "UNWATCH inside MULTI is only queued");
        assert_eq!(s.db, None, "a queued SELECT runs at EXEC, if at all");
        s.after_ok(Effect::EndMulti);
        assert!(!s.multi && !s.watching);
        assert!(s.dirty(), "the database is still unknown");
    }

    #[test]
    fn poison_sticks_and_the_first_reason_is_kept() {
        let mut s = Session::new(0);
        s.before(Effect::Poison("SUBSCRIBE"));
        s.before(Effect::Poison("MONITOR"));
        s.after_ok(Effect::Poison("SUBSCRIBE"));
        assert_eq!(s.poisoned, Some("SUBSCRIBE"));
        assert!(s.unusable());
    }
}
