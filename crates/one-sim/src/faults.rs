//! Fault injection for the reliability tests of slurm-one, driven through `sim.*` methods
//! (outside OpenNebula's namespace): fail the Nth call of a method with an OpenNebula error,
//! delay answers, drop the connection, and pretend every host is full.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What a rule does to a matching call.
#[derive(Debug, Clone, PartialEq)]
pub enum Injected {
    /// Answer with oned's failure array for this code and message.
    Fail {
        /// OpenNebula error code.
        code: i32,
        /// Message after the `[method] ` prefix.
        message: String,
    },
    /// Close the connection without answering.
    Drop,
    /// Wait this long before answering.
    Delay(Duration),
}

#[derive(Debug)]
struct Rule {
    method: String,
    effect: Injected,
    /// Calls still to let through before the one that triggers; `None` = every call.
    remaining: Option<u32>,
}

/// The active fault rules.
#[derive(Debug, Default)]
pub struct Faults {
    rules: Mutex<Vec<Rule>>,
    hosts_full: AtomicBool,
}

impl Faults {
    /// Adds a rule for `method` (`*` matches every OpenNebula method). `nth` = 1 hits the
    /// next call, N the Nth next one (once); 0 hits every call until cleared.
    pub fn add(&self, method: &str, nth: u32, effect: Injected) {
        let remaining = if nth == 0 { None } else { Some(nth - 1) };
        if let Ok(mut rules) = self.rules.lock() {
            rules.push(Rule {
                method: method.to_string(),
                effect,
                remaining,
            });
        }
    }

    /// Removes every rule and frees the hosts.
    pub fn clear(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.clear();
        }
        self.hosts_full.store(false, Ordering::SeqCst);
    }

    /// Makes the scheduler see no room on any host (VMs stay PENDING).
    pub fn set_hosts_full(&self, full: bool) {
        self.hosts_full.store(full, Ordering::SeqCst);
    }

    /// Whether the scheduler must see every host as full.
    pub fn hosts_full(&self) -> bool {
        self.hosts_full.load(Ordering::SeqCst)
    }

    /// The effects for one call of `method`: any delays, then at most one fail or drop.
    pub fn check(&self, method: &str) -> Vec<Injected> {
        let Ok(mut rules) = self.rules.lock() else {
            return Vec::new();
        };
        let mut effects = Vec::new();
        let mut terminal_taken = false;
        rules.retain_mut(|rule| {
            if rule.method != method && rule.method != "*" {
                return true;
            }
            let terminal = !matches!(rule.effect, Injected::Delay(_));
            if terminal && terminal_taken {
                return true;
            }
            match rule.remaining {
                None => {
                    terminal_taken |= terminal;
                    effects.push(rule.effect.clone());
                    true
                }
                Some(0) => {
                    terminal_taken |= terminal;
                    effects.push(rule.effect.clone());
                    false
                }
                Some(ref mut n) => {
                    *n -= 1;
                    true
                }
            }
        });
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail() -> Injected {
        Injected::Fail {
            code: 0x4000,
            message: "boom".into(),
        }
    }

    #[test]
    fn nth_rule_hits_only_the_nth_call() {
        let f = Faults::default();
        f.add("one.vm.allocate", 2, fail());
        assert!(f.check("one.vm.allocate").is_empty());
        assert_eq!(f.check("one.vm.allocate"), vec![fail()]);
        assert!(f.check("one.vm.allocate").is_empty());
    }

    #[test]
    fn zero_rule_hits_every_call_until_cleared() {
        let f = Faults::default();
        f.add("one.vm.allocate", 0, fail());
        assert_eq!(f.check("one.vm.allocate"), vec![fail()]);
        assert_eq!(f.check("one.vm.allocate"), vec![fail()]);
        assert!(f.check("one.vm.info").is_empty());
        f.clear();
        assert!(f.check("one.vm.allocate").is_empty());
    }

    #[test]
    fn delays_combine_with_one_failure() {
        let f = Faults::default();
        f.add("*", 0, Injected::Delay(Duration::from_millis(5)));
        f.add("one.vm.info", 1, Injected::Drop);
        f.add("one.vm.info", 1, fail());
        let effects = f.check("one.vm.info");
        assert_eq!(
            effects,
            vec![Injected::Delay(Duration::from_millis(5)), Injected::Drop]
        );
        assert_eq!(
            f.check("one.vm.info"),
            vec![Injected::Delay(Duration::from_millis(5)), fail()]
        );
    }
}
