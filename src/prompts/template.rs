//! Templates: compiled once per load into one MiniJinja environment, rendered per request.
//!
//! Step 4 of the request path (after selection and few-shot picking): render the chosen
//! version's body with the request's variables and the built-ins.

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};
use minijinja::value::{Enumerator, Object};
use minijinja::{
    AutoEscape, Environment, Error, ErrorKind, Output, State, Template, UndefinedBehavior, Value,
};
use serde_json::Map;

use super::variables::Variables;

/// Names every template sees without the request passing them.
pub const BUILTINS: [&str; 6] = [
    "today",
    "now",
    "prompt_name",
    "prompt_version",
    "user_message",
    "examples",
];

/// Builds the environment every template of a prompt set is compiled into.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Undefined variables are errors, so a typo never silently renders as "".
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Prompts are plain text: nothing is HTML-escaped, whatever the file is called.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_formatter(format_value);
    env
}

/// Writes a value a template prints: text as it is, straight into the output, when nothing is
/// escaped; everything else (numbers, none, sequences, maps, text under `{% autoescape %}`) as
/// MiniJinja's default formatter writes it. The same bytes as the default formatter, without
/// going through `Display` for every string a prompt prints. (An undefined value never gets
/// here under strict undefined: the engine refuses it first.)
fn format_value(out: &mut Output, state: &mut State, value: &Value) -> Result<(), Error> {
    if let (AutoEscape::None, Some(text)) = (state.auto_escape(), value.as_str()) {
        return out.write_str(text).map_err(Error::from);
    }
    minijinja::escape_formatter(out, state, value)
}

/// What compiling a template learnt about it.
#[derive(Debug, Clone, Default)]
pub struct Compiled {
    /// Top-level variables the template reads and does not set itself.
    pub uses: BTreeSet<String>,
}

/// Compiles `body` under `key`. On a syntax error returns the line within the body and the
/// problem.
pub fn compile(
    env: &mut Environment<'static>,
    key: &str,
    body: &str,
) -> Result<Compiled, (Option<usize>, String)> {
    env.add_template_owned(key.to_owned(), body.to_owned())
        .map_err(|e| {
            let detail = e
                .detail()
                .map_or_else(|| e.kind().to_string(), str::to_owned);
            (e.line(), format!("template {}: {detail}", e.kind()))
        })?;
    let template = env
        .get_template(key)
        .map_err(|e| (None, format!("template could not be loaded: {e}")))?;
    Ok(Compiled {
        uses: template.undeclared_variables(false).into_iter().collect(),
    })
}

/// A request could not be rendered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "missing variables for prompt `{prompt}` version {version}: {}; pass them in `prompt.variables`",
        list(.missing)
    )]
    MissingVariables {
        prompt: String,
        version: u32,
        missing: Vec<String>,
    },
    /// The variables do not match the version's `input_schema`: every failing path.
    #[error(
        "variables for prompt `{prompt}` version {version} do not match its `input_schema`: {}",
        problems.join("; ")
    )]
    InvalidVariables {
        prompt: String,
        version: u32,
        problems: Vec<String>,
    },
    #[error("prompt `{prompt}` version {version} failed to render: {detail}")]
    Template {
        prompt: String,
        version: u32,
        detail: String,
    },
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Everything a render needs besides the environment, for a render outside a request (the
/// console's preview): variables as JSON, built-ins as text.
pub struct RenderInput<'a> {
    pub prompt: &'a str,
    pub version: u32,
    pub key: &'a str,
    /// Variables the version declares as required (`variables:` in front matter), if any.
    pub declared: Option<&'a [String]>,
    /// Variables the template reads.
    pub uses: &'a BTreeSet<String>,
    pub variables: &'a Map<String, serde_json::Value>,
    pub builtins: Builtins<'a>,
}

/// The built-in values of a render, as text.
#[derive(Clone, Copy)]
pub struct Builtins<'a> {
    pub today: &'a str,
    pub now: &'a str,
    pub user_message: &'a str,
    pub examples: &'a str,
}

/// The variables a version declares (`variables:` in front matter) that the request lacks, as
/// the error [`render`] answers; checked once per request, before any template renders.
pub fn check_declared(
    prompt: &str,
    version: u32,
    declared: Option<&[String]>,
    variables: &Variables,
) -> Result<(), RenderError> {
    let Some(declared) = declared else {
        return Ok(());
    };
    let provided = |n: &&String| variables.contains(n) || BUILTINS.contains(&n.as_str());
    if declared.iter().all(|n| provided(&n)) {
        return Ok(());
    }
    let missing: BTreeSet<&String> = declared.iter().filter(|n| !provided(n)).collect();
    Err(RenderError::MissingVariables {
        prompt: prompt.to_owned(),
        version,
        missing: missing.into_iter().cloned().collect(),
    })
}

/// Renders one template outside a request. Every missing variable is named at once; values
/// are inserted as data and never evaluated as templates.
pub fn render(env: &Environment<'static>, input: &RenderInput<'_>) -> Result<String, RenderError> {
    let variables = Variables::from(input.variables.clone());
    // Declared variables are required up front. Without a declaration the template decides
    // while rendering: a variable read under `is defined` or through `default(...)` is optional.
    check_declared(input.prompt, input.version, input.declared, &variables)?;
    let context = Context::new(
        input.prompt,
        input.version,
        variables,
        Clock::Text {
            today: Value::from(input.builtins.today),
            now: Value::from(input.builtins.now),
        },
        Value::from(input.builtins.user_message),
        Value::from(input.builtins.examples),
    );
    render_in(env, input.key, input.uses, &context)
}

/// Renders the template `key` of a version in `context`, whose declared variables were checked
/// already ([`check_declared`]). A variable the template reads unguarded and the request lacks
/// is named with every other such variable.
pub fn render_in(
    env: &Environment<'static>,
    key: &str,
    uses: &BTreeSet<String>,
    context: &Context,
) -> Result<String, RenderError> {
    let template = env
        .get_template(key)
        .map_err(|e| context.template_error(e.to_string()))?;
    render_template(&template, uses, context)
}

/// Renders a compiled template (see [`render_in`]).
fn render_template(
    template: &Template<'_, '_>,
    uses: &BTreeSet<String>,
    context: &Context,
) -> Result<String, RenderError> {
    template.render(context.root.clone()).map_err(|e| {
        if e.kind() == ErrorKind::UndefinedError {
            // A variable the version did not declare but the template reads unguarded.
            let missing: Vec<String> = uses
                .iter()
                .filter(|n| !context.provides(n))
                .cloned()
                .collect();
            if !missing.is_empty() {
                return RenderError::MissingVariables {
                    prompt: context.scope.prompt_name().to_owned(),
                    version: context.scope.prompt_version,
                    missing,
                };
            }
        }
        let mut detail = e
            .detail()
            .map_or_else(|| e.kind().to_string(), str::to_owned);
        if let Some(line) = e.line() {
            detail.push_str(&format!(" (template line {line})"));
        }
        context.template_error(detail)
    })
}

/// When `today` and `now` are.
#[derive(Debug)]
pub enum Clock {
    /// A request's time: formatted only when a template reads it.
    At(DateTime<Utc>),
    /// Given as text.
    Text { today: Value, now: Value },
}

/// What a template sees: the request's variables over the built-ins (a variable wins over a
/// built-in of the same name). Each name is looked up when the template reads it, so nothing
/// is copied or formatted for names a template does not read. One per request, shared by
/// every template of the version (cloning is a reference count).
#[derive(Debug, Clone)]
pub struct Context {
    scope: Arc<Scope>,
    root: Value,
}

#[derive(Debug)]
struct Scope {
    variables: Variables,
    prompt_name: Value,
    prompt_version: u32,
    clock: Clock,
    user_message: Value,
    examples: Value,
}

impl Scope {
    fn prompt_name(&self) -> &str {
        self.prompt_name.as_str().unwrap_or_default()
    }

    fn lookup(&self, name: &str) -> Option<Value> {
        if let Some(value) = self.variables.get(name) {
            return Some(value);
        }
        Some(match name {
            "today" => match &self.clock {
                Clock::At(at) => date_text(at),
                Clock::Text { today, .. } => today.clone(),
            },
            "now" => match &self.clock {
                Clock::At(at) => time_text(at),
                Clock::Text { now, .. } => now.clone(),
            },
            "prompt_name" => self.prompt_name.clone(),
            "prompt_version" => Value::from(self.prompt_version),
            "user_message" => self.user_message.clone(),
            "examples" => self.examples.clone(),
            _ => return None,
        })
    }
}

impl Object for Scope {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        key.as_str().and_then(|name| self.lookup(name))
    }

    fn get_value_by_str(self: &Arc<Self>, name: &str) -> Option<Value> {
        self.lookup(name)
    }

    /// Every name, sorted, as a map of them lists them.
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let names: BTreeSet<&str> = self.variables.names().chain(BUILTINS).collect();
        Enumerator::Values(names.into_iter().map(Value::from).collect())
    }
}

/// `today`: `2026-11-25`.
fn date_text(at: &DateTime<Utc>) -> Value {
    let mut out = [0u8; 10];
    match write_date(&mut out, at) {
        Some(()) => Value::from(std::str::from_utf8(&out).unwrap_or_default()),
        None => Value::from(at.format("%Y-%m-%d").to_string()),
    }
}

/// `now`: `2026-11-25T10:00:00Z`.
fn time_text(at: &DateTime<Utc>) -> Value {
    let mut out = *b"0000-00-00T00:00:00Z";
    // UTC's local time is its UTC time: read it once, without applying a zero offset.
    let time = at.naive_utc().time();
    // chrono writes a leap second as second 60, and a year past 9999 with a sign.
    match write_date(&mut out, at).filter(|()| time.nanosecond() < 1_000_000_000) {
        Some(()) => {
            for (at, n) in [(11, time.hour()), (14, time.minute()), (17, time.second())] {
                out[at..at + 2].copy_from_slice(&two_digits(n));
            }
            Value::from(std::str::from_utf8(&out).unwrap_or_default())
        }
        None => Value::from(at.to_rfc3339_opts(SecondsFormat::Secs, true)),
    }
}

/// Writes `YYYY-MM-DD` at the start of `out`; `None` for a year that is not four digits.
fn write_date(out: &mut [u8], at: &DateTime<Utc>) -> Option<()> {
    // (The date read once: each of `at.year()`, `.month()`, `.day()` would apply the zero
    // offset again.)
    let at = at.naive_utc().date();
    let year = u32::try_from(at.year()).ok().filter(|y| *y <= 9999)?;
    out[..4].copy_from_slice(&[
        b'0' + (year / 1000) as u8,
        b'0' + (year / 100 % 10) as u8,
        b'0' + (year / 10 % 10) as u8,
        b'0' + (year % 10) as u8,
    ]);
    out[4] = b'-';
    out[5..7].copy_from_slice(&two_digits(at.month()));
    out[7] = b'-';
    out[8..10].copy_from_slice(&two_digits(at.day()));
    Some(())
}

fn two_digits(n: u32) -> [u8; 2] {
    [b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

impl Context {
    pub fn new(
        prompt: &str,
        version: u32,
        variables: Variables,
        clock: Clock,
        user_message: Value,
        examples: Value,
    ) -> Self {
        let scope = Arc::new(Scope {
            variables,
            prompt_name: Value::from(prompt),
            prompt_version: version,
            clock,
            user_message,
            examples,
        });
        Context {
            root: Value::from_dyn_object(scope.clone()),
            scope,
        }
    }

    fn template_error(&self, detail: String) -> RenderError {
        RenderError::Template {
            prompt: self.scope.prompt_name().to_owned(),
            version: self.scope.prompt_version,
            detail,
        }
    }

    /// True when the request gives `name` (a built-in included).
    fn provides(&self, name: &str) -> bool {
        self.scope.variables.contains(name) || BUILTINS.contains(&name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn builtins() -> Builtins<'static> {
        Builtins {
            today: "2026-11-25",
            now: "2026-11-25T10:00:00Z",
            user_message: "help",
            examples: "",
        }
    }

    fn render_str(
        body: &str,
        declared: Option<&[String]>,
        vars: serde_json::Value,
    ) -> Result<String, RenderError> {
        let mut env = environment();
        let compiled = compile(&mut env, "p/v1", body).unwrap();
        let serde_json::Value::Object(vars) = vars else {
            panic!("vars must be an object")
        };
        render(
            &env,
            &RenderInput {
                prompt: "p",
                version: 1,
                key: "p/v1",
                declared,
                uses: &compiled.uses,
                variables: &vars,
                builtins: builtins(),
            },
        )
    }

    /// A context built whole, every value converted up front: what the lazy one must equal.
    fn render_whole(body: &str, vars: &serde_json::Value) -> Result<String, minijinja::Error> {
        let mut env = environment();
        env.add_template("t", body).unwrap();
        let b = builtins();
        let mut ctx = std::collections::BTreeMap::<String, Value>::new();
        ctx.insert("today".into(), Value::from(b.today));
        ctx.insert("now".into(), Value::from(b.now));
        ctx.insert("prompt_name".into(), Value::from("p"));
        ctx.insert("prompt_version".into(), Value::from(1));
        ctx.insert("user_message".into(), Value::from(b.user_message));
        ctx.insert("examples".into(), Value::from(b.examples));
        for (name, value) in vars.as_object().unwrap() {
            ctx.insert(name.clone(), Value::from(minijinja::value::Serde(value)));
        }
        env.get_template("t").unwrap().render(Value::from(ctx))
    }

    #[test]
    fn the_lazy_context_renders_what_a_whole_one_renders() {
        let vars = json!({
            "company_name": "Acme Corp", "tier": "enterprise", "n": 3, "f": 1.5, "neg": -2,
            "ok": false, "none": null, "products": ["API", "Dashboard", 3, [true]],
            "obj": {"z": 1, "a": {"b": [1, 2]}}, "mixed": [1, {"k": "v"}],
            "history_summary": "3 tickets in the last month, all about billing",
            "today": "overridden", "range": "a variable, not the function"
        });
        let template = "{{ company_name }} {{ tier }}{% if tier == \"enterprise\" %}!{% endif %}\n\
            {% for p in products %}- {{ p }}\n{% endfor %}{{ n + 1 }} {{ f }} {{ neg }} {{ ok }} \
            {{ none }} {{ obj }} {{ obj.a.b[1] }} {{ mixed }} {{ mixed[1].k }} {{ history_summary }}\n\
            {{ today }} {{ now }} {{ prompt_name }} v{{ prompt_version }} [{{ user_message }}] \
            [{{ examples }}] {{ range }} {{ missing | default(\"d\") }}\
            {% if other is defined %}no{% endif %} {{ obj | tojson }} {{ products | length }}";
        let out = render_str(template, None, vars.clone()).unwrap();
        assert_eq!(out, render_whole(template, &vars).unwrap());
        assert!(out.starts_with("Acme Corp enterprise!\n- API\n"), "{out}");
    }

    #[test]
    fn the_formatter_writes_what_the_default_one_writes() {
        // The same environment with MiniJinja's own formatter.
        let mut default = Environment::new();
        default.set_undefined_behavior(UndefinedBehavior::Strict);
        default.set_auto_escape_callback(|_| AutoEscape::None);
        let ours = environment();
        let mut ctx = std::collections::BTreeMap::<&str, Value>::new();
        ctx.insert("s", Value::from("plain"));
        ctx.insert(
            "html",
            Value::from("<b>&\"'/ a string longer than the inline one"),
        );
        ctx.insert("safe", Value::from_safe_string("<i>safe</i>".to_owned()));
        ctx.insert("empty", Value::from(""));
        ctx.insert("bytes", Value::from_bytes(b"by<tes".to_vec()));
        ctx.insert("bad_bytes", Value::from_bytes(vec![b'a', 0xff, b'b']));
        ctx.insert("u", Value::from(42u64));
        ctx.insert("i", Value::from(-7i64));
        ctx.insert("f", Value::from(1.0f64));
        ctx.insert("g", Value::from(2.5e-8f64));
        ctx.insert("nan", Value::from(f64::NAN));
        ctx.insert("big", Value::from(u128::MAX));
        ctx.insert("b", Value::from(true));
        ctx.insert("none", Value::from(()));
        ctx.insert(
            "seq",
            Value::from(vec![Value::from("a<"), Value::from(1), Value::from(())]),
        );
        ctx.insert(
            "map",
            Value::from(minijinja::value::Serde(
                &json!({"k": "v<", "n": [1, 2.5], "z": null}),
            )),
        );
        let ctx = Value::from(ctx);
        let names = [
            "s",
            "html",
            "safe",
            "empty",
            "bytes",
            "bad_bytes",
            "u",
            "i",
            "f",
            "g",
            "nan",
            "big",
            "b",
            "none",
            "seq",
            "map",
        ];
        let mut templates: Vec<String> = Vec::new();
        for name in names {
            templates.push(format!("[{{{{ {name} }}}}]"));
            templates.push(format!("{{{{ {name} | safe }}}}|{{{{ {name} | string }}}}"));
            for mode in ["true", "false", "\"html\"", "\"json\"", "\"none\""] {
                templates.push(format!(
                    "{{% autoescape {mode} %}}({{{{ {name} }}}}){{% endautoescape %}}"
                ));
            }
        }
        templates.extend(
            [
                "{{ seq | join(s) }} {{ [s, html, u, none] | join(\", \") }}",
                "{% set c %}{{ html }}{{ u }}{% endset %}{{ c }}",
                "{% autoescape true %}{% set c %}{{ html }}{% endset %}{{ c }}{% endautoescape %}",
                "{% for x in seq %}{{ x }};{{ loop.index }}{% endfor %}",
                "{{ \"%s-%s\" | format(html, u) }} {{ undefined_name | default(\"d\") }}",
                "{{ none if b }}{{ s if not b }}.",
                "ok {{ missing }}",
                "{% autoescape true %}{{ missing }}{% endautoescape %}",
            ]
            .map(str::to_owned),
        );
        for body in &templates {
            let render = |env: &Environment<'_>| {
                env.render_str(body, ctx.clone())
                    .map_err(|e| (e.kind(), e.line(), e.detail().map(str::to_owned)))
            };
            let expected = render(&default);
            assert_eq!(render(&ours), expected, "{body}");
        }
        // Every kind of outcome was compared, errors included.
        assert!(templates.iter().any(|t| render_ok(&ours, t, &ctx).is_err()));
    }

    fn render_ok(env: &Environment<'_>, body: &str, ctx: &Value) -> Result<String, Error> {
        env.render_str(body, ctx.clone())
    }

    #[test]
    fn seed_style_placeholders_render_like_the_seed() {
        let out = render_str(
            "Agent for {{company_name}}; {{ customer_name }} is {{tier}}.",
            None,
            json!({"company_name": "Acme Corp", "customer_name": "Alice", "tier": "enterprise"}),
        )
        .unwrap();
        assert_eq!(out, "Agent for Acme Corp; Alice is enterprise.");
    }

    #[test]
    fn values_are_data_not_templates() {
        let out = render_str(
            "Hi {{ name }} ({{ tier }})",
            None,
            json!({"name": "{{ tier }}", "tier": "pro"}),
        )
        .unwrap();
        assert_eq!(out, "Hi {{ tier }} (pro)");
    }

    #[test]
    fn no_html_escaping() {
        let out = render_str("{{ x }}", None, json!({"x": "<b>&\"'"})).unwrap();
        assert_eq!(out, "<b>&\"'");
    }

    #[test]
    fn missing_variables_are_all_named() {
        let err = render_str("{{ a }} {{ b }} {{ c }}", None, json!({"b": 1})).unwrap_err();
        assert_eq!(
            err,
            RenderError::MissingVariables {
                prompt: "p".into(),
                version: 1,
                missing: vec!["a".into(), "c".into()]
            }
        );
        assert_eq!(
            err.to_string(),
            "missing variables for prompt `p` version 1: `a`, `c`; pass them in `prompt.variables`"
        );
    }

    #[test]
    fn declared_variables_are_required_even_if_unused() {
        let declared = vec!["a".to_owned(), "unused".to_owned()];
        let err = render_str("{{ a }}", Some(&declared), json!({"a": 1})).unwrap_err();
        assert!(
            matches!(err, RenderError::MissingVariables { missing, .. } if missing == vec!["unused".to_owned()])
        );
    }

    #[test]
    fn undeclared_but_used_variable_is_named() {
        let declared = vec!["a".to_owned()];
        let err = render_str("{{ a }} {{ b }}", Some(&declared), json!({"a": 1})).unwrap_err();
        assert!(
            matches!(err, RenderError::MissingVariables { missing, .. } if missing == vec!["b".to_owned()])
        );
    }

    #[test]
    fn guarded_optional_variable_may_be_absent() {
        let declared = vec!["a".to_owned()];
        let out = render_str(
            "{{ a }}{% if b is defined %} {{ b }}{% endif %}",
            Some(&declared),
            json!({"a": 1}),
        )
        .unwrap();
        assert_eq!(out, "1");
    }

    #[test]
    fn defaults_and_guards_make_variables_optional() {
        let out = render_str(
            "Hi {{ name | default(\"there\") }}{% if vip is defined %} (VIP){% endif %}",
            None,
            json!({}),
        )
        .unwrap();
        assert_eq!(out, "Hi there");
    }

    #[test]
    fn builtins_and_conditionals_work() {
        let out = render_str(
            "{{ prompt_name }} v{{ prompt_version }} {{ today }}{% if tier == \"enterprise\" %} VIP{% endif %} [{{ user_message }}]",
            None,
            json!({"tier": "enterprise"}),
        )
        .unwrap();
        assert_eq!(out, "p v1 2026-11-25 VIP [help]");
    }

    #[test]
    fn json_values_render_naturally() {
        let out = render_str(
            "{% for t in topics %}{{ t }};{% endfor %} {{ n }} {{ ok }}",
            None,
            json!({"topics": ["a", "b"], "n": 3, "ok": true}),
        )
        .unwrap();
        // Booleans print as Jinja2 and the seed's `str()` print them.
        assert_eq!(out, "a;b; 3 True");
    }

    #[test]
    fn today_and_now_are_written_as_chrono_writes_them() {
        use chrono::TimeZone;
        let times = [
            Utc.with_ymd_and_hms(2026, 1, 5, 3, 4, 9).unwrap(),
            Utc.with_ymd_and_hms(999, 12, 31, 23, 59, 59).unwrap(),
            Utc.with_ymd_and_hms(12026, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-5, 1, 1, 0, 0, 0).unwrap(),
            Utc.timestamp_opt(1_700_000_000, 999_999_999).unwrap(),
            Utc.timestamp_opt(1_700_000_039, 1_500_000_000).unwrap(),
        ];
        for at in times {
            assert_eq!(
                date_text(&at).as_str(),
                Some(at.format("%Y-%m-%d").to_string().as_str())
            );
            assert_eq!(
                time_text(&at).as_str(),
                Some(at.to_rfc3339_opts(SecondsFormat::Secs, true).as_str())
            );
        }
    }

    #[test]
    fn syntax_errors_carry_the_line() {
        let mut env = environment();
        let (line, message) =
            compile(&mut env, "p/v1", "line one\nline two\n{{ x + }}").unwrap_err();
        assert_eq!(line, Some(3));
        assert!(message.starts_with("template syntax error"), "{message}");
    }
}
