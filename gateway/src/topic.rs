//! MQTT topics of the uplink: the topic template (`m/{domain}/c/{channel}/{subtopic}` as SuperMQ
//! ≥ 0.17, the `legacy` preset `channels/{channel}/messages/{subtopic}`) and subtopic validation
//! as SuperMQ does it. Pure string work: no I/O.

use std::fmt;

/// The SuperMQ ≥ 0.17 topic layout (default).
pub const DEFAULT_TEMPLATE: &str = "m/{domain}/c/{channel}/{subtopic}";
/// The SuperMQ ≤ 0.16 / Mainflux layout, selected with `topic_template = "legacy"`.
pub const LEGACY_TEMPLATE: &str = "channels/{channel}/messages/{subtopic}";

/// Why a subtopic or template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("subtopic must not contain wildcards (+ # * >)")]
    Wildcard,
    #[error("subtopic must not contain whitespace or control characters")]
    Whitespace,
    #[error("subtopic must not contain empty levels (//)")]
    EmptyLevel,
    #[error("subtopic is longer than {max} bytes")]
    TooLong { max: usize },
    #[error("topic template must contain {{channel}}")]
    NoChannel,
    #[error(
        "topic template has an unknown placeholder `{0}` (known: {{domain}} {{channel}} {{subtopic}} {{client}})"
    )]
    UnknownPlaceholder(String),
    #[error("topic template must not contain wildcards (+ #)")]
    TemplateWildcard,
}

/// Longest subtopic accepted (the whole topic must stay well under MQTT's 64 KiB).
pub const MAX_SUBTOPIC: usize = 1024;

/// Validates and normalises a subtopic as SuperMQ does: `.` or `/` separated levels, no
/// wildcards (`+ # * >`), no whitespace, no empty levels. Leading/trailing separators are
/// trimmed; `.` becomes `/`. Empty is allowed (no subtopic).
pub fn validate_subtopic(raw: &str) -> Result<String, TopicError> {
    if raw.len() > MAX_SUBTOPIC {
        return Err(TopicError::TooLong { max: MAX_SUBTOPIC });
    }
    if raw.contains(['+', '#', '*', '>']) {
        return Err(TopicError::Wildcard);
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicError::Whitespace);
    }
    // `.` → `/` only when there is one to replace (one allocation per message, not two).
    let normalised;
    let trimmed = if raw.contains('.') {
        normalised = raw.replace('.', "/");
        normalised.trim_matches('/')
    } else {
        raw.trim_matches('/')
    };
    if trimmed.split('/').any(str::is_empty) && !trimmed.is_empty() {
        return Err(TopicError::EmptyLevel);
    }
    Ok(trimmed.to_owned())
}

/// A validated topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate(String);

/// The values a template is filled with.
#[derive(Debug, Clone, Copy)]
pub struct TopicParts<'a> {
    pub domain: &'a str,
    pub channel: &'a str,
    pub subtopic: &'a str,
    pub client: &'a str,
}

impl TopicTemplate {
    /// Parses a template or the preset names `default` and `legacy`.
    pub fn parse(raw: &str) -> Result<Self, TopicError> {
        let raw = match raw.trim() {
            "" | "default" => DEFAULT_TEMPLATE,
            "legacy" => LEGACY_TEMPLATE,
            other => other,
        };
        if raw.contains(['+', '#']) {
            return Err(TopicError::TemplateWildcard);
        }
        if !raw.contains("{channel}") {
            return Err(TopicError::NoChannel);
        }
        let mut rest = raw;
        while let Some(start) = rest.find('{') {
            let end = rest[start..]
                .find('}')
                .map_or(rest.len(), |e| start + e + 1);
            let name = &rest[start..end];
            if !Placeholder::is(name) {
                return Err(TopicError::UnknownPlaceholder(name.to_owned()));
            }
            rest = &rest[end..];
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The topic for a message. An empty subtopic leaves no trailing `/`. One pass over the
    /// template, one allocation (this runs for every message the uplink sends); a value is
    /// copied as it is, never searched for placeholders itself.
    pub fn render(&self, parts: TopicParts<'_>) -> String {
        let mut out = String::with_capacity(
            self.0.len()
                + parts.domain.len()
                + parts.channel.len()
                + parts.client.len()
                + parts.subtopic.len(),
        );
        let mut rest = self.0.as_str();
        while !rest.is_empty() {
            let (value, taken) = match rest.find('{') {
                Some(0) => match Placeholder::at(rest) {
                    Some((p, len)) => (p.value(&parts), len),
                    None => (&rest[..1], 1),
                },
                Some(start) => (&rest[..start], start),
                None => (rest, rest.len()),
            };
            push_levels(&mut out, value);
            rest = &rest[taken..];
        }
        if out.ends_with('/') {
            out.pop();
        }
        out
    }

    /// The topic of a channel without subtopic, `{client}` as the wildcard `+` (downlink).
    pub fn channel_filter(&self, domain: &str, channel: &str) -> String {
        self.render(TopicParts {
            domain,
            channel,
            subtopic: "",
            client: "+",
        })
    }
}

/// A placeholder of a topic template.
#[derive(Debug, Clone, Copy)]
enum Placeholder {
    Domain,
    Channel,
    Client,
    Subtopic,
}

impl Placeholder {
    const ALL: [(&'static str, Self); 4] = [
        ("{domain}", Self::Domain),
        ("{channel}", Self::Channel),
        ("{client}", Self::Client),
        ("{subtopic}", Self::Subtopic),
    ];

    /// The placeholder `s` starts with, and its length.
    fn at(s: &str) -> Option<(Self, usize)> {
        Self::ALL
            .into_iter()
            .find(|(name, _)| s.starts_with(name))
            .map(|(name, p)| (p, name.len()))
    }

    /// Whether `name` (braces included) is a placeholder.
    fn is(name: &str) -> bool {
        Self::ALL.iter().any(|(n, _)| *n == name)
    }

    fn value<'a>(self, parts: &TopicParts<'a>) -> &'a str {
        match self {
            Self::Domain => parts.domain,
            Self::Channel => parts.channel,
            Self::Client => parts.client,
            Self::Subtopic => parts.subtopic,
        }
    }
}

/// Appends `s` to a topic, leaving out empty levels (no leading `/`, no `//`).
fn push_levels(out: &mut String, s: &str) {
    for c in s.chars() {
        if c == '/' && (out.is_empty() || out.ends_with('/')) {
            continue;
        }
        out.push(c);
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The one upstream domain of a channel, whichever adapter a message came in on and for the
/// downlink subscription alike: the channel's own domain, else `gateway.domain_id` (possibly
/// empty). A sensor's path never chooses it (issues 20.13, 21.4).
pub fn effective_domain<'a>(channel_domain: &'a str, gateway_domain: &'a str) -> &'a str {
    if channel_domain.is_empty() {
        gateway_domain
    } else {
        channel_domain
    }
}

/// Whether `topic` matches the MQTT filter `filter` (`+` one level, `#` the rest).
pub fn matches_filter(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            level => {
                if t.next() != Some(level) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts<'a>(subtopic: &'a str) -> TopicParts<'a> {
        TopicParts {
            domain: "d1",
            channel: "c1",
            subtopic,
            client: "k1",
        }
    }

    #[test]
    fn default_and_legacy_templates_render_as_supermq() {
        let t = TopicTemplate::parse("default").unwrap();
        assert_eq!(t.render(parts("temp/room1")), "m/d1/c/c1/temp/room1");
        assert_eq!(t.render(parts("")), "m/d1/c/c1");
        let t = TopicTemplate::parse("legacy").unwrap();
        assert_eq!(t.render(parts("x")), "channels/c1/messages/x");
        let t = TopicTemplate::parse("gw/{client}/{channel}/{subtopic}").unwrap();
        assert_eq!(t.render(parts("a")), "gw/k1/c1/a");
        assert_eq!(t.channel_filter("d", "c"), "gw/+/c");
    }

    #[test]
    fn empty_levels_collapse_and_values_are_not_expanded_again() {
        let t = TopicTemplate::parse("/m/{domain}/c/{channel}/{subtopic}/").unwrap();
        let empty_domain = TopicParts {
            domain: "",
            ..parts("a//b/")
        };
        assert_eq!(t.render(empty_domain), "m/c/c1/a/b");
        // A value that looks like a placeholder is copied as it is.
        let tricky = TopicParts {
            domain: "{client}",
            ..parts("{channel}")
        };
        assert_eq!(t.render(tricky), "m/{client}/c/c1/{channel}");
        let t = TopicTemplate::parse("{channel}{subtopic}x").unwrap();
        assert_eq!(t.render(parts("")), "c1x");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert_eq!(
            TopicTemplate::parse("m/{domain}/x"),
            Err(TopicError::NoChannel)
        );
        assert!(matches!(
            TopicTemplate::parse("m/{chan}/{channel}"),
            Err(TopicError::UnknownPlaceholder(p)) if p == "{chan}"
        ));
        assert_eq!(
            TopicTemplate::parse("m/+/{channel}"),
            Err(TopicError::TemplateWildcard)
        );
    }

    #[test]
    fn subtopics_are_validated_as_supermq() {
        assert_eq!(validate_subtopic("a.b/c").unwrap(), "a/b/c");
        assert_eq!(validate_subtopic("/a/b/").unwrap(), "a/b");
        assert_eq!(validate_subtopic("").unwrap(), "");
        for bad in ["a/+", "a/#", "a*", "a>b"] {
            assert_eq!(validate_subtopic(bad), Err(TopicError::Wildcard), "{bad}");
        }
        assert_eq!(validate_subtopic("a b"), Err(TopicError::Whitespace));
        assert_eq!(validate_subtopic("a//b"), Err(TopicError::EmptyLevel));
        assert_eq!(validate_subtopic("a..b"), Err(TopicError::EmptyLevel));
        assert!(matches!(
            validate_subtopic(&"a".repeat(MAX_SUBTOPIC + 1)),
            Err(TopicError::TooLong { .. })
        ));
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(matches_filter("m/d/c/c1/cmd/#", "m/d/c/c1/cmd/x/y"));
        assert!(matches_filter("m/d/c/c1/cmd/#", "m/d/c/c1/cmd"));
        assert!(matches_filter("gw/+/c", "gw/k/c"));
        assert!(!matches_filter("gw/+/c", "gw/k/c/x"));
        assert!(!matches_filter("m/d/c/c1/cmd/#", "m/d/c/c2/cmd/x"));
    }
}
