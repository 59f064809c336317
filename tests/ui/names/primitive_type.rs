// A model named like a primitive type would shadow it inside its own impl: the checks
// refuse it, and no stand-in is declared under that name.
use densenet::densenet;

densenet! {
    pub f32<growth: 12, depth: 40>;
    pub usize<growth: 12, depth: 40>
}

fn main() {}
