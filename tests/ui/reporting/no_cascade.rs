// A failing spec still declares its model (a stand-in with the same API), so code that
// uses the name, its constants and methods adds no errors: the only error is the spec's.
use densenet::densenet;
use densenet::ndarray::Array4;

densenet! {
    pub Net<growth: 0, blocks: [6, 12, 24, 16], head: avg>
}

fn features(model: &Net) -> usize {
    let x = Array4::<f32>::zeros((1, 3, 224, 224));
    model.forward(x.view()).map(|f| f.ncols()).unwrap_or(0)
}

fn main() {
    let model = Net::init(0);
    assert_eq!(features(&model) as u64, Net::PARAMS);
    println!("{}", Net::summary());
}
