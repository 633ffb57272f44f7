//! Chat templates: renderings byte-equal to transformers' `apply_chat_template` (the fixture
//! written by tools/chat_template_reference.py), the prompt/answer split of conversations, the
//! error of a template that cannot be split, the built-in rendering of models without a
//! template, and the `generate --chat` prompt.

mod common;

use std::path::{Path, PathBuf};

use sculpt::data::jsonl::parse_jsonl;
use sculpt::model::{ChatTemplate, Tokenizer};
use sculpt::train::{chat_prompt_ids, encode_example};
use serde_json::{json, Value};

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat/smollm2_chat.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn templates() -> Vec<Value> {
    fixture()["templates"].as_array().unwrap().clone()
}

fn named(name: &str) -> Value {
    templates().into_iter().find(|t| t["name"] == name).unwrap()
}

/// A model folder holding the tiny Llama fixture's tokenizer.json and `config` as
/// tokenizer_config.json.
fn folder(name: &str, config: &Value) -> PathBuf {
    let dir = common::scratch("chat", name);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa");
    std::fs::copy(fixtures.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    if !config.is_null() {
        std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(config).unwrap()).unwrap();
    }
    dir
}

fn tokenizer(dir: &Path) -> Tokenizer {
    Tokenizer::load(dir, 128).unwrap()
}

/// The conversation of a fixture entry as one JSONL line's examples.
fn examples_of(conversation: &Value, origin: &str) -> Vec<sculpt::data::Example> {
    let line = serde_json::to_string(&json!({"messages": conversation["messages"]})).unwrap();
    parse_jsonl(&line, origin).unwrap()
}

#[test]
fn renderings_and_splits_are_byte_equal_to_transformers() {
    for entry in templates() {
        let name = entry["name"].as_str().unwrap();
        let dir = folder(&format!("render-{name}"), &entry["tokenizer_config"]);
        let template = ChatTemplate::load(&dir).unwrap().expect("the config holds a template");
        for (c, conversation) in entry["conversations"].as_array().unwrap().iter().enumerate() {
            let messages = conversation["messages"].as_array().unwrap();
            for (generation, key) in [(false, "rendered"), (true, "rendered_generation")] {
                assert_eq!(
                    template.render(messages, generation).unwrap(),
                    conversation[key].as_str().unwrap(),
                    "{name}: conversation {c}, {key}"
                );
            }
            let examples = examples_of(conversation, "c.jsonl");
            let want = conversation["examples"].as_array().unwrap();
            assert_eq!(examples.len(), want.len(), "{name}: conversation {c}");
            for (e, w) in examples.iter().zip(want) {
                let (source, target) = template.split_turn(&e.chat.as_ref().unwrap().messages).unwrap();
                assert_eq!(
                    (source.as_str(), target.as_str()),
                    (w["source"].as_str().unwrap(), w["target"].as_str().unwrap()),
                    "{name}: conversation {c}"
                );
            }
        }
    }
}

#[test]
fn the_template_is_read_from_chat_template_jinja_or_a_named_list() {
    let smol = named("smollm2");
    let config = &smol["tokenizer_config"];
    let source = config["chat_template"].as_str().unwrap();
    let conversation = &smol["conversations"][2];
    let want = conversation["rendered_generation"].as_str().unwrap();
    let messages = conversation["messages"].as_array().unwrap();

    // chat_template.jinja beside a tokenizer_config.json without a template; its special tokens
    // as {"content": ...} objects.
    let mut tokens = config.clone();
    tokens.as_object_mut().unwrap().remove("chat_template");
    tokens["eos_token"] = json!({"content": "<|im_end|>", "special": true});
    let dir = folder("jinja", &tokens);
    std::fs::write(dir.join("chat_template.jinja"), source).unwrap();
    let tok = tokenizer(&dir);
    let template = tok.chat_template().unwrap();
    assert_eq!(template.render(messages, true).unwrap(), want);
    assert_eq!(template.end_of_turn(), Some("<|im_end|>"));
    assert!(template.origin().ends_with("chat_template.jinja"), "{}", template.origin());
    // Checkpoints copy the template file with the tokenizer's.
    assert!(tok.files().iter().any(|f| f.ends_with("chat_template.jinja")));

    let mut listed = config.clone();
    listed["chat_template"] =
        json!([{"name": "tool_use", "template": "tools!"}, {"name": "default", "template": source}]);
    let template = ChatTemplate::load(&folder("list", &listed)).unwrap().unwrap();
    assert_eq!(template.render(messages, true).unwrap(), want);

    listed["chat_template"] = json!([{"name": "tool_use", "template": "tools!"}]);
    let err = format!("{:#}", ChatTemplate::load(&folder("list-no-default", &listed)).unwrap_err());
    assert!(err.contains("tokenizer_config.json (chat_template): none of the chat templates [tool_use]"), "{err}");

    let mut broken = config.clone();
    broken["chat_template"] = json!("{% for m in messages %}{{ m.content }");
    let err = format!("{:#}", Tokenizer::load(&folder("broken", &broken), 128).err().unwrap());
    assert!(err.contains("tokenizer_config.json (chat_template): the chat template does not compile"), "{err}");
}

#[test]
fn a_multi_turn_conversation_becomes_one_example_per_assistant_message() {
    let smol = named("smollm2");
    let tok = tokenizer(&folder("split", &smol["tokenizer_config"]));
    let template = tok.chat_template().unwrap();
    let text = concat!(
        r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},"#,
        r#" {"role": "assistant", "content": "4"}, {"role": "user", "content": "and 3+3?"},"#,
        r#" {"role": "assistant", "content": "6"}]}"#
    );
    let examples = parse_jsonl(text, "chat.jsonl").unwrap();
    let split: Vec<(String, String)> =
        examples.iter().map(|e| template.split_turn(&e.chat.as_ref().unwrap().messages).unwrap()).collect();
    let first = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(
        split,
        [
            (first.to_string(), "4<|im_end|>".to_string()),
            (
                format!("{first}4<|im_end|>\n<|im_start|>user\nand 3+3?<|im_end|>\n<|im_start|>assistant\n"),
                "6<|im_end|>".to_string()
            ),
        ]
    );
    // Encoded without the tokenizer's added `</s>` (the plain example below gets it).
    let (source, target) = encode_example(&tok, &examples[1]).unwrap();
    assert_eq!(source, tok.encode_rendered(&split[1].0).unwrap());
    assert_eq!(target, tok.encode_rendered("6<|im_end|>").unwrap());
    assert_ne!(target.last(), Some(&1));
    let plain = parse_jsonl(r#"{"input": "copy: a", "target": "a"}"#, "x.jsonl").unwrap();
    let (source, target) = encode_example(&tok, &plain[0]).unwrap();
    assert_eq!((source.last(), target.last()), (Some(&1), Some(&1)));
}

#[test]
fn a_template_whose_renderings_do_not_extend_each_other_is_refused_naming_the_line() {
    // The message count up front: the prompt "1..." is no prefix of the full "2...".
    let config = json!({"chat_template": "{{ messages | length }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}", "eos_token": "</s>"});
    let tok = tokenizer(&folder("no-prefix", &config));
    let text =
        "\n{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}";
    let examples = parse_jsonl(text, "data/chat.jsonl").unwrap();
    let err = format!("{:#}", encode_example(&tok, &examples[0]).unwrap_err());
    assert!(err.contains("data/chat.jsonl:2: messages[1]"), "{err}");
    assert!(
        err.contains("tokenizer_config.json (chat_template): the chat template cannot split this conversation"),
        "{err}"
    );
    assert!(err.contains("add_generation_prompt=true"), "{err}");
}

#[test]
fn a_model_without_a_template_keeps_the_built_in_rendering() {
    let tok = tokenizer(&folder("none", &json!({"eos_token": "</s>"})));
    assert!(tok.chat_template().is_none());
    assert_eq!(tok.end_of_turn_id(), None);
    let text = r#"{"messages": [{"role": "user", "content": "a b"}, {"role": "assistant", "content": "c"}]}"#;
    let examples = parse_jsonl(text, "chat.jsonl").unwrap();
    assert_eq!((examples[0].input.as_str(), examples[0].target.as_str()), ("User: a b\nAssistant:", " c"));
    let pair = encode_example(&tok, &examples[0]).unwrap();
    assert_eq!(pair, (tok.encode("User: a b\nAssistant:").unwrap(), tok.encode(" c").unwrap()));

    // `generate --chat` without a template: the built-in prompt, encoded as before.
    let messages = sculpt::cli::generate::chat_messages(Some("be kind"), "a b");
    let (ids, templated) = chat_prompt_ids(&tok, &messages).unwrap();
    assert!(!templated);
    assert_eq!(ids, tok.encode("System: be kind\nUser: a b\nAssistant:").unwrap());
}

#[test]
fn generate_chat_renders_one_user_turn_with_the_generation_prompt() {
    let smol = named("smollm2");
    let tok = tokenizer(&folder("generate", &smol["tokenizer_config"]));
    let (ids, templated) = chat_prompt_ids(&tok, &sculpt::cli::generate::chat_messages(None, "Hi!")).unwrap();
    assert!(templated);
    let want = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(ids, tok.encode_rendered(want).unwrap());
    let messages = sculpt::cli::generate::chat_messages(Some("Be brief."), "Hi!");
    assert_eq!(
        tok.chat_template().unwrap().render(&messages, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    );
}

/// With the real SmolLM2 tokenizer (imported from its GGUF file), the token ids of the
/// renderings and of every example equal transformers' `apply_chat_template(tokenize=True)`.
#[test]
fn token_ids_match_transformers_with_the_real_smollm2_tokenizer() {
    let tok = Tokenizer::load(&common::smollm2_dir(), 49152).unwrap();
    assert!(tok.chat_template().is_some());
    assert_eq!(tok.end_of_turn_id(), Some(fixture()["smollm2_eos_token_id"].as_u64().unwrap() as u32));
    let ids = |v: &Value| v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect::<Vec<_>>();
    for (c, conversation) in named("smollm2")["conversations"].as_array().unwrap().iter().enumerate() {
        for (key, ids_key) in [("rendered", "ids"), ("rendered_generation", "ids_generation")] {
            let got = tok.encode_rendered(conversation[key].as_str().unwrap()).unwrap();
            assert_eq!(got, ids(&conversation[ids_key]), "conversation {c}: {ids_key}");
        }
        for (e, want) in examples_of(conversation, "c.jsonl").iter().zip(conversation["examples"].as_array().unwrap()) {
            let (source, target) = encode_example(&tok, e).unwrap();
            assert_eq!((source, target), (ids(&want["source_ids"]), ids(&want["target_ids"])), "conversation {c}");
        }
    }
}

/// End to end on the tiny Llama fixture (lavapipe): a chat example is evaluated through the
/// model's template, greedy output stops at the end-of-turn token and is compared with the
/// assistant message.
#[test]
fn eval_of_chat_data_uses_the_template_and_stops_at_the_end_of_turn_token() {
    let dir = common::scratch("chat", "llama-eval");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_gqa");
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixtures.join(name), dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "</s>", "pad_token": "<pad>"}"#).unwrap();
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% for m in messages %}{{ m.role }}: {{ m.content }}</s>{% endfor %}\n{% if add_generation_prompt %}assistant:{% endif %}\n",
    )
    .unwrap();
    let gpu = sculpt::Gpu::new(&Default::default()).unwrap();
    let (model, tok) = sculpt::model::load_model(&gpu, &dir).unwrap();
    assert_eq!(tok.end_of_turn_id(), Some(1));
    let user = json!({"role": "user", "content": "copy a b"});
    let (prompt, templated) = chat_prompt_ids(&tok, std::slice::from_ref(&user)).unwrap();
    assert!(templated);
    assert_eq!(prompt, tok.encode_rendered("user: copy a b</s>assistant:").unwrap());
    let answer = sculpt::train::greedy_text(&*model, &tok, &prompt, 8).unwrap();

    let line = |content: &str| {
        serde_json::to_string(&json!({"messages": [user, {"role": "assistant", "content": content}]})).unwrap()
    };
    let text = format!("{}\n{}\n", line(&answer), line(&format!("{answer} zz")));
    let examples = parse_jsonl(&text, "chat.jsonl").unwrap();
    let (source, target) = encode_example(&tok, &examples[0]).unwrap();
    assert_eq!(source, prompt);
    assert_eq!(target, tok.encode_rendered(&format!("{answer}</s>")).unwrap());
    let result = sculpt::cli::eval::evaluate(&*model, &tok, &examples, 2).unwrap();
    assert_eq!((result.examples, result.exact_match), (2, 0.5), "greedy answer {answer:?}");
    assert!(result.loss.is_finite());

    // An end-of-turn token the config's eos ids do not hold: the text stops before it.
    let ids = model.generate(&prompt, 8).unwrap();
    assert!(ids.len() >= 2 && ids[1] != ids[0], "{ids:?}");
    let vocab: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap()).unwrap();
    let piece = vocab["model"]["vocab"][ids[1] as usize][0].as_str().unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), json!({"eos_token": piece}).to_string()).unwrap();
    let tok = tokenizer(&dir);
    assert_eq!(tok.end_of_turn_id(), Some(ids[1]));
    assert_eq!(sculpt::train::greedy_text(&*model, &tok, &prompt, 8).unwrap(), tok.decode(&ids[..1]).unwrap());
}

/// A templated prompt longer than --max-source-len keeps its end: the latest user turn and the
/// generation prompt the answer follows (a plain source keeps its start and last token).
#[test]
fn a_long_chat_prompt_is_cut_from_the_start() {
    let tok = Tokenizer::load(&common::smollm2_dir(), 49152).unwrap();
    let long = "word ".repeat(200);
    let line = json!({"messages": [{"role": "user", "content": long}, {"role": "assistant", "content": "short"}]});
    let examples = parse_jsonl(&line.to_string(), "long.jsonl").unwrap();
    let (full, _) = encode_example(&tok, &examples[0]).unwrap();
    let cut = sculpt::train::encode(&tok, &examples, 16, 64).unwrap();
    assert_eq!(cut.truncated_sources, 1);
    assert_eq!(cut.pairs[0].0, full[full.len() - 16..], "the prompt's last 16 tokens");
    let generation_prompt = tok.encode_rendered("<|im_start|>assistant\n").unwrap();
    assert!(cut.pairs[0].0.ends_with(&generation_prompt), "{:?}", tok.decode(&cut.pairs[0].0));
}
