//! What a routing decision can look at: the request's features as the device measured them.

use serde::{Deserialize, Serialize};

/// The device's thermal state, as mobile platforms report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Thermal {
    #[default]
    Nominal,
    Fair,
    Serious,
    Critical,
}

impl Thermal {
    pub fn as_str(self) -> &'static str {
        match self {
            Thermal::Nominal => "nominal",
            Thermal::Fair => "fair",
            Thermal::Serious => "serious",
            Thermal::Critical => "critical",
        }
    }
}

/// The features of one request. Every field is bound as a CEL variable of the same name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Features {
    /// Best intent label (`oos` when out of scope), `""` without an intent classifier.
    pub intent: String,
    /// Domain of the intent (`""` when out of scope or unknown).
    pub domain: String,
    /// Probability of the best intent, in [0, 1].
    pub confidence: f64,
    pub out_of_scope: bool,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    /// State of charge in [0, 1]; 1 on mains power.
    pub battery: f64,
    pub thermal: Thermal,
    /// Whether the device currently has a measured link to the gateway.
    pub link_up: bool,
    /// Smoothed round-trip time to the gateway (0 when the link is down).
    pub rtt_ms: f64,
    /// Measured uplink bandwidth in Mbit/s (0 when the link is down).
    pub bandwidth_mbps: f64,
    /// The device's measured decode speed running every layer.
    pub local_tokens_per_s: f64,
    /// Cloud tokens left in the device's daily quota.
    pub cloud_quota_left: u64,
    /// Hour of the day on the device's clock, 0..=23.
    pub hour: u32,
}

/// The CEL variables a condition may use, with their types for `policy check`.
pub const VARIABLES: [(&str, &str); 14] = [
    ("intent", "string"),
    ("domain", "string"),
    ("confidence", "double in [0, 1]"),
    ("out_of_scope", "bool"),
    ("prompt_tokens", "int"),
    ("max_tokens", "int"),
    ("battery", "double in [0, 1]"),
    ("thermal", "string: nominal, fair, serious, critical"),
    ("link_up", "bool"),
    ("rtt_ms", "double"),
    ("bandwidth_mbps", "double"),
    ("local_tokens_per_s", "double"),
    ("cloud_quota_left", "int"),
    ("hour", "int 0..=23"),
];

impl Features {
    /// Checks the ranges of measured values (features arrive from devices and traces).
    pub fn validate(&self) -> Result<(), String> {
        let unit = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name} {v} must be in [0, 1]"))
            }
        };
        unit("confidence", self.confidence)?;
        unit("battery", self.battery)?;
        for (name, v) in [
            ("rtt_ms", self.rtt_ms),
            ("bandwidth_mbps", self.bandwidth_mbps),
            ("local_tokens_per_s", self.local_tokens_per_s),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} {v} must be a non-negative number"));
            }
        }
        if self.hour > 23 {
            return Err(format!("hour {} must be in 0..=23", self.hour));
        }
        Ok(())
    }

    /// The features as CEL variables.
    pub fn context(&self) -> cel::Context<'static, 'static> {
        use cel::Value;
        let mut c = cel::Context::default();
        let s = |v: &str| Value::String(v.to_string().into());
        c.add_variable_from_value("intent", s(&self.intent));
        c.add_variable_from_value("domain", s(&self.domain));
        c.add_variable_from_value("confidence", Value::Float(self.confidence));
        c.add_variable_from_value("out_of_scope", Value::Bool(self.out_of_scope));
        c.add_variable_from_value("prompt_tokens", Value::Int(self.prompt_tokens.into()));
        c.add_variable_from_value("max_tokens", Value::Int(self.max_tokens.into()));
        c.add_variable_from_value("battery", Value::Float(self.battery));
        c.add_variable_from_value("thermal", s(self.thermal.as_str()));
        c.add_variable_from_value("link_up", Value::Bool(self.link_up));
        c.add_variable_from_value("rtt_ms", Value::Float(self.rtt_ms));
        c.add_variable_from_value("bandwidth_mbps", Value::Float(self.bandwidth_mbps));
        c.add_variable_from_value("local_tokens_per_s", Value::Float(self.local_tokens_per_s));
        c.add_variable_from_value(
            "cloud_quota_left",
            Value::Int(i64::try_from(self.cloud_quota_left).unwrap_or(i64::MAX)),
        );
        c.add_variable_from_value("hour", Value::Int(self.hour.into()));
        c
    }

    /// A typical request, for checking conditions and for tests.
    pub fn example() -> Self {
        Features {
            intent: "tire_pressure".into(),
            domain: "auto_and_commute".into(),
            confidence: 0.9,
            out_of_scope: false,
            prompt_tokens: 32,
            max_tokens: 128,
            battery: 0.8,
            thermal: Thermal::Nominal,
            link_up: true,
            rtt_ms: 40.0,
            bandwidth_mbps: 20.0,
            local_tokens_per_s: 60.0,
            cloud_quota_left: 100_000,
            hour: 12,
        }
    }
}
