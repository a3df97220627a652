//! Metric families built from values read at scrape time (no registry: every value is read from
//! the broker when Prometheus asks), encoded by the prometheus crate's text encoder.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

/// One family being filled.
pub struct Family {
    inner: MetricFamily,
    metrics: Vec<Metric>,
}

fn labelled(labels: &[(&str, &str)]) -> Metric {
    Metric::from_label(
        labels
            .iter()
            .map(|(k, v)| {
                let mut l = LabelPair::default();
                l.set_name((*k).to_string());
                l.set_value((*v).to_string());
                l
            })
            .collect(),
    )
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut inner = MetricFamily::default();
        inner.set_name(format!("rabbitmq_{name}"));
        inner.set_help(help.to_string());
        inner.set_field_type(kind);
        Family {
            inner,
            metrics: Vec::new(),
        }
    }

    pub fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    pub fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    pub fn histogram(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::HISTOGRAM)
    }

    /// A sample with `labels`; its kind is the family's.
    pub fn with(mut self, labels: &[(&str, &str)], value: f64) -> Family {
        self.push(labels, value);
        self
    }

    pub fn push(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut m = labelled(labels);
        match self.inner.get_field_type() {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        self.metrics.push(m);
    }

    /// A histogram sample: per-bucket counts (not cumulative) under `bounds`, the last count
    /// above every bound; and the sum.
    pub fn push_histogram(
        &mut self,
        labels: &[(&str, &str)],
        bounds: &[u64],
        counts: &[u64],
        sum: u64,
    ) {
        let mut h = Histogram::default();
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(bounds.len());
        for (bound, n) in bounds.iter().zip(counts) {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(*bound as f64);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let total: u64 = counts.iter().sum();
        h.set_bucket(buckets);
        h.set_sample_count(total);
        h.set_sample_sum(sum as f64);
        let mut m = labelled(labels);
        m.set_histogram(h);
        self.metrics.push(m);
    }

    pub fn done(mut self) -> MetricFamily {
        self.inner.set_metric(self.metrics);
        self.inner
    }
}
