//! Reading Prometheus text exposition.

/// One sample line: metric name, labels as written, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: String,
    pub value: f64,
}

/// Every sample whose name starts with `prefix`. Comment lines and lines
/// that do not parse are skipped.
pub fn samples(text: &str, prefix: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && line.starts_with(prefix))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some(Sample {
                name: name.to_string(),
                labels: labels.to_string(),
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_samples_by_prefix_with_labels() {
        let text = "# TYPE a counter\n\
                    tessera_client_messages_total{kind=\"move\"} 12\n\
                    tessera_sessions_active 3\n\
                    other_metric 1\n\
                    tessera_broken_line\n";
        let got = samples(text, "tessera_");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name, "tessera_client_messages_total");
        assert_eq!(got[0].labels, "kind=\"move\"");
        assert_eq!(got[0].value, 12.0);
        assert_eq!(got[1].labels, "");
    }
}
