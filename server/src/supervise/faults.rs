//! Fault points: named places inside actor handlers where a drill can make
//! the actor panic inside its own boundary.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// Which kind of actor a fault point is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultActor {
    Session,
    Room,
}

/// Named points inside actor handlers and continuations (the `what` of
/// their panic boundary) where a drill or test can make the actor panic,
/// inside that boundary, like a real bug would. Points are armed only
/// through the admin API, which refuses unless `admin.fault_injection` is
/// on; a registry built with fault injection off refuses to arm anything,
/// and checking an unarmed registry is one atomic load.
#[derive(Clone, Default)]
pub struct FaultPoints {
    inner: Arc<FaultInner>,
}

#[derive(Default)]
struct FaultInner {
    enabled: bool,
    armed: AtomicU64,
    points: Mutex<Vec<Armed>>,
}

struct Armed {
    actor: FaultActor,
    point: &'static str,
    /// A player id (sessions) or map (rooms); `None`: the first to pass.
    target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArmError {
    #[error("fault injection is off: set admin.fault_injection")]
    Disabled,
    #[error("no fault point {point:?} (points: {known})")]
    UnknownPoint { point: String, known: String },
}

impl FaultPoints {
    pub fn new(enabled: bool) -> FaultPoints {
        FaultPoints {
            inner: Arc::new(FaultInner {
                enabled,
                ..FaultInner::default()
            }),
        }
    }

    /// Arm `point` (one of `known`) once: the next `actor` passing it,
    /// whose target is `target` (any when `None`), panics there.
    pub fn arm(
        &self,
        actor: FaultActor,
        known: &'static [&'static str],
        point: &str,
        target: Option<String>,
    ) -> Result<(), ArmError> {
        if !self.inner.enabled {
            return Err(ArmError::Disabled);
        }
        let Some(point) = known.iter().copied().find(|p| *p == point) else {
            return Err(ArmError::UnknownPoint {
                point: point.to_string(),
                known: known.join(", "),
            });
        };
        tracing::warn!(?actor, point, ?target, "fault point armed");
        self.inner.points.lock().push(Armed {
            actor,
            point,
            target,
        });
        self.inner.armed.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Whether any point is armed: lets a caller skip working out the
    /// target of [`FaultPoints::trip`] on its hot path.
    pub fn any_armed(&self) -> bool {
        self.inner.armed.load(Ordering::Acquire) != 0
    }

    /// Panic if `point` is armed for this actor. Call inside the boundary.
    pub fn trip(&self, actor: FaultActor, point: &str, target: Option<&str>) {
        if self.inner.armed.load(Ordering::Acquire) == 0 {
            return;
        }
        let hit = {
            let mut points = self.inner.points.lock();
            let found = points.iter().position(|a| {
                a.actor == actor
                    && a.point == point
                    && a.target.as_deref().is_none_or(|t| Some(t) == target)
            });
            found.map(|i| points.remove(i))
        };
        if let Some(armed) = hit {
            self.inner.armed.fetch_sub(1, Ordering::Release);
            panic!("injected fault at {:?} {}", armed.actor, armed.point);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::catch;

    const POINTS: &[&str] = &["join", "tick"];

    #[test]
    fn fault_points_arm_once_for_their_target_and_never_when_off() {
        let off = FaultPoints::new(false);
        assert_eq!(
            off.arm(FaultActor::Room, POINTS, "join", None),
            Err(ArmError::Disabled)
        );
        off.trip(FaultActor::Room, "join", Some("a"));

        let faults = FaultPoints::new(true);
        assert!(!faults.any_armed());
        let err = faults
            .arm(FaultActor::Room, POINTS, "nowhere", None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"no fault point "nowhere" (points: join, tick)"#
        );
        faults
            .arm(FaultActor::Room, POINTS, "join", Some("a".into()))
            .unwrap();
        assert!(faults.any_armed());
        // Another point, another actor kind, another target: untouched.
        faults.trip(FaultActor::Room, "tick", Some("a"));
        faults.trip(FaultActor::Session, "join", Some("a"));
        faults.trip(FaultActor::Room, "join", Some("b"));
        faults.trip(FaultActor::Room, "join", None);
        let hit = catch(|| faults.trip(FaultActor::Room, "join", Some("a"))).unwrap_err();
        assert_eq!(hit, "injected fault at Room join");
        // Once only.
        assert!(!faults.any_armed());
        faults.trip(FaultActor::Room, "join", Some("a"));
        // No target: the first to pass.
        faults
            .arm(FaultActor::Session, POINTS, "tick", None)
            .unwrap();
        assert!(catch(|| faults.trip(FaultActor::Session, "tick", None)).is_err());
        faults.trip(FaultActor::Session, "tick", Some("x"));
    }
}
