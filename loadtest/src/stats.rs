//! The arithmetic of a measurement, pure and tested: the steady window of a
//! run, a rate over it, and the median and range of repeated runs.

use std::time::Duration;

/// The part of a run that counts: from the end of the warm-up to the end of
/// generation. Acknowledgements after it (the drain) are not counted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub start: Duration,
    pub end: Duration,
}

impl Window {
    /// The last `1 - warmup_share` of a run that generated for `duration`.
    /// `warmup_share` is clamped to `0.0..1.0`.
    pub fn steady(duration: Duration, warmup_share: f64) -> Window {
        let share = if warmup_share.is_finite() {
            warmup_share.clamp(0.0, 0.99)
        } else {
            0.0
        };
        Window {
            start: duration.mul_f64(share),
            end: duration,
        }
    }

    pub fn len(&self) -> Duration {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len().is_zero()
    }

    /// `[start, end)`.
    pub fn contains(&self, at: Duration) -> bool {
        at >= self.start && at < self.end
    }

    /// Events per second among `times` (since the run started) that fall in
    /// the window; 0 for an empty window.
    pub fn rate(&self, times: impl IntoIterator<Item = Duration>) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let n = times.into_iter().filter(|t| self.contains(*t)).count();
        n as f64 / self.len().as_secs_f64()
    }
}

/// The median of repeated runs and the range around it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values; NaNs are ignored.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Spread {
            median: median_of_sorted(&v),
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// The median of `values`, or `None` for none (NaNs ignored).
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    Spread::of(values).map(|s| s.median)
}

fn median_of_sorted(v: &[f64]) -> f64 {
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// `a / b`, or `None` when `b` is not a positive number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn steady_window_skips_the_warm_up_and_the_drain() {
        let w = Window::steady(s(20.0), 0.2);
        assert_eq!((w.start, w.end), (s(4.0), s(20.0)));
        // 3.9 s is warm-up, 20.0 s and later is the drain.
        let times = [3.9, 4.0, 10.0, 19.99, 20.0, 25.0].map(s);
        assert_eq!(w.rate(times), 3.0 / 16.0);
    }

    #[test]
    fn warm_up_share_is_clamped_and_an_empty_window_has_no_rate() {
        assert_eq!(Window::steady(s(10.0), -1.0).start, Duration::ZERO);
        assert_eq!(Window::steady(s(10.0), f64::NAN).start, Duration::ZERO);
        assert!(Window::steady(s(10.0), 5.0).start < s(10.0));
        let empty = Window::steady(Duration::ZERO, 0.2);
        assert!(empty.is_empty());
        assert_eq!(empty.rate([Duration::ZERO]), 0.0);
    }

    #[test]
    fn median_of_odd_and_even_counts_and_range() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([]), None);
        assert_eq!(
            Spread::of([5.0, f64::NAN, 1.0, 9.0]),
            Some(Spread {
                median: 5.0,
                min: 1.0,
                max: 9.0
            })
        );
    }

    #[test]
    fn ratio_needs_a_positive_baseline() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 2.0), None);
    }
}
