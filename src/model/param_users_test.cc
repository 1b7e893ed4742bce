// The modules using each parameter: owners and ties counted over the whole tree, and the
// per-pass countdown that says when a parameter's gradient is final.
#include "model/param_users.h"

#include <gtest/gtest.h>

#include <string>

#include "strata/model.h"

namespace strata::model {
namespace {

// A module with one parameter of its own, optionally tying another module's.
class Leaf final : public Module {
 public:
  explicit Leaf(const std::string& name, Parameter* tie = nullptr)
      : Module(name), weight(add_parameter(name + ".weight", {4}, ParamInit::kZeros)) {
    if (tie != nullptr) tie_parameter(*tie);
  }
  Parameter& weight;
};

// root -> {a, b (ties a.weight), c (ties a.weight)}.
class Tree final : public Module {
 public:
  Tree() : Module(""), a("a"), b("b", &a.weight), c("c", &a.weight) {
    add_child(a);
    add_child(b);
    add_child(c);
  }
  Leaf a, b, c;
};

TEST(ParamUsers, CountsOwnersAndTies) {
  Tree t;
  const ParamUsers u(t);
  EXPECT_EQ(u.users(t.a.weight), 3);
  EXPECT_EQ(u.users(t.b.weight), 1);
  EXPECT_EQ(u.users(t.c.weight), 1);
  Leaf stranger("stranger");
  EXPECT_EQ(u.users(stranger.weight), 0);
  EXPECT_FALSE(ParamUsers().finish_use(t.a.weight));
}

TEST(ParamUsers, AParameterIsFinalAfterItsLastUser) {
  Tree t;
  ParamUsers u(t);
  for (int pass = 0; pass < 2; ++pass) {
    SCOPED_TRACE("pass " + std::to_string(pass));
    EXPECT_TRUE(u.finish_use(t.c.weight));  // its only user
    EXPECT_FALSE(u.finish_use(t.a.weight));
    EXPECT_FALSE(u.finish_use(t.a.weight));
    EXPECT_TRUE(u.finish_use(t.a.weight));   // the third user
    EXPECT_FALSE(u.finish_use(t.a.weight));  // final already: once per pass
    Leaf stranger("stranger");
    EXPECT_FALSE(u.finish_use(stranger.weight));
    u.reset();
  }
}

// GPT-2's output head is tied to the token embedding: wte has two users, every other parameter one.
TEST(ParamUsers, TiedGptEmbeddingHasTwoUsers) {
  GptConfig c;
  ASSERT_TRUE(model_preset("tiny", &c.dims));
  auto gpt = Gpt::create(c);
  ASSERT_TRUE(gpt.ok()) << gpt.status();
  const ParamUsers u(**gpt);
  for (const Parameter* p : (*gpt)->parameters()) {
    EXPECT_EQ(u.users(*p), p->name() == "wte.weight" ? 2 : 1) << p->name();
  }
}

}  // namespace
}  // namespace strata::model
