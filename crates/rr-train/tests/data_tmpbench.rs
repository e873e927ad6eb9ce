use rr_train::data::*;
#[test]
fn bench() {
    let d = std::path::Path::new("/work/shared/data");
    let tmp = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let s = pack(&PackOptions::new(d.join("tokenizers/llama2/tokenizer.json"), vec![d.join("tinystories/tinystories_train_head_lowercased.txt"), d.join("gsm8k/train.jsonl")], InputFormat::Text, 1024, tmp.path().join("p"))).unwrap();
    println!("{s}{:?}", t.elapsed());
    let t = std::time::Instant::now();
    let set = std::sync::Arc::new(PackedSet::open(tmp.path().join("p")).unwrap());
    let mut l = Loader::new(set, Split::Train, 8, 0).unwrap();
    let mut n = 0; for _ in 0..200 { n += l.next_batch().rows; }
    println!("{n} rows {:?}", t.elapsed());
}
