//! Topic handling: `validate_subtopic` and `TopicTemplate::parse` on arbitrary text must not
//! panic; an accepted subtopic is normalised (validating it again gives it back), holds no
//! wildcard, whitespace or empty level, and a rendered topic never contains wildcards from it.
#![no_main]

use gateway::topic::{TopicParts, TopicTemplate, matches_filter, validate_subtopic};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = text.split_once('\n').unwrap_or((text, ""));
    if let Ok(sub) = validate_subtopic(first) {
        assert_eq!(validate_subtopic(&sub).as_ref(), Ok(&sub), "not idempotent");
        assert!(!sub.contains(['+', '#', '*', '>']));
        assert!(!sub.chars().any(char::is_whitespace));
        assert!(sub.is_empty() || !sub.split('/').any(str::is_empty));
        let template = TopicTemplate::parse(second).unwrap_or_else(|_| {
            TopicTemplate::parse("default").expect("the default template parses")
        });
        let topic = template.render(TopicParts {
            domain: "dom",
            channel: "ch",
            subtopic: &sub,
            client: "c",
        });
        assert!(!topic.contains("//"), "{topic}");
        assert!(matches_filter(&topic, &topic), "{topic} does not match itself");
        let _ = matches_filter(second, &topic);
    }
});
